"""Sophgo's smoke test for torch_tpu, on tpu:0: a Linear layer on the chip, result back on the CPU."""

import torch
import torch_tpu  # noqa: F401  (registers the tpu device)

out = torch.nn.Linear(768, 3).to("tpu:0")(torch.rand(8, 1024, 768).to("tpu:0")).cpu()
assert tuple(out.shape) == (8, 1024, 3), out.shape
assert torch.isfinite(out).all(), "non-finite values from tpu:0"
print("smoke test on tpu:0 passed:", tuple(out.shape))
