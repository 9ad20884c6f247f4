"""OpenPGP signing of the bundle with gpg: the key `make bundle-key` makes, signatures, verification.

The signing key lives in a GnuPG home the operator keeps on the control node that builds the
bundle (`make bundle-key BUNDLE_GNUPGHOME=...`); only its public half travels, as
bundle/signing-key.asc. Verification never trusts that file: it imports it into a throwaway
keyring and accepts a signature only when gpg reports it VALIDSIG for the fingerprint the
inventory names (sophon_sd_bundle_signing_fingerprint), so a bundle re-signed with another key
and shipped with that key's public half is refused.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

KEY_USER_ID = "sophon-sd-kit bundle signing key"
FINGERPRINT = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")


class SigningError(Exception):
    """Signing or verification failed; the message is one line naming the file and the fix."""


def gpg(home: Path, *argv: str, input_bytes: Optional[bytes] = None) -> subprocess.CompletedProcess:
    """gpg in HOME, never prompting; stdout is the status lines when --status-fd 1 is passed."""
    try:
        return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback",
                               "--passphrase", "", *argv], capture_output=True, input=input_bytes, timeout=120)
    except FileNotFoundError:
        raise SigningError("gpg not found: the bundle is signed and verified with GnuPG (apt-get install gnupg)") from None


def stop_agent(home: Path) -> None:
    """Signing starts a gpg-agent for HOME; stop it so that no process is left behind. The agent
    exits a moment after it is told to, and a gpg started meanwhile loses its connection ("End of
    file"), so wait until its socket is gone."""
    socket = subprocess.run(["gpgconf", "--homedir", str(home), "--list-dirs", "agent-socket"],
                            capture_output=True, text=True, check=False).stdout.strip()
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False)
    deadline = time.monotonic() + 5
    while socket and os.path.exists(socket) and time.monotonic() < deadline:
        time.sleep(0.05)


def normalize(fingerprint: str) -> str:
    """A fingerprint as gpg prints it in status lines: hex upper case, without spaces or 0x."""
    value = fingerprint.replace(" ", "").upper()
    return value[2:] if value.startswith("0X") else value


def secret_fingerprints(home: Path) -> List[str]:
    """The primary fingerprints of the secret keys in HOME."""
    if not home.is_dir():
        return []
    try:
        listing = gpg(home, "--with-colons", "--list-secret-keys")
    finally:
        stop_agent(home)  # listing secret keys starts one too
    fingerprints, after_sec = [], False
    for line in listing.stdout.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            after_sec = True
        elif fields[0] == "fpr" and after_sec:
            fingerprints.append(fields[9])
            after_sec = False
    return fingerprints


def signing_key(home: Path) -> str:
    """The one signing key in HOME; an operator mistake otherwise."""
    found = secret_fingerprints(home)
    if len(found) != 1:
        what = "no secret key" if not found else f"{len(found)} secret keys ({', '.join(found)})"
        raise SigningError(f"{home} holds {what}: make bundle signs with the one key `make bundle-key` creates there "
                           "(BUNDLE_GNUPGHOME=<that folder>)")
    return found[0]


def create_key(home: Path) -> str:
    """Create HOME's signing key (ed25519, no expiry, no passphrase: make bundle signs unattended)
    unless it has one; returns its fingerprint."""
    if secret_fingerprints(home):
        return signing_key(home)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    try:
        made = gpg(home, "--quick-generate-key", KEY_USER_ID, "ed25519", "sign", "never")
    finally:
        stop_agent(home)
    if made.returncode != 0:
        raise SigningError(f"gpg could not create a key in {home}: {last_line(made)}")
    return signing_key(home)


def export_public(home: Path, fingerprint: str) -> bytes:
    exported = gpg(home, "--armor", "--export-options", "export-minimal", "--export", fingerprint)
    if exported.returncode != 0 or not exported.stdout:
        raise SigningError(f"gpg could not export key {fingerprint} from {home}: {last_line(exported)}")
    return exported.stdout


def sign(home: Path, fingerprint: str, data: bytes, clearsign: bool = False) -> bytes:
    """A detached armored signature of DATA (or DATA clearsigned, as apt's InRelease is)."""
    try:
        signed = gpg(home, "--local-user", fingerprint, "--digest-algo", "SHA512", "--armor",
                     "--clearsign" if clearsign else "--detach-sign", "--output", "-", input_bytes=data)
    finally:
        stop_agent(home)
    if signed.returncode != 0:
        raise SigningError(f"gpg could not sign with key {fingerprint} from {home}: {last_line(signed)}")
    return signed.stdout


def signer(public_key: Path, signature: Path, data: Optional[Path] = None) -> str:
    """The primary fingerprint of the key that validly signed DATA (detached SIGNATURE) or the
    clearsigned SIGNATURE, checked with only PUBLIC_KEY in a throwaway keyring; '' when none did."""
    # A short folder: gpg puts its sockets in the home, and socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sdkit-gpg-") as scratch:
        home = Path(scratch)
        imported = gpg(home, "--import", str(public_key))
        if imported.returncode != 0:
            return ""
        checked = gpg(home, "--status-fd", "1", "--verify", str(signature), *([str(data)] if data else []))
    status = [line.split() for line in checked.stdout.decode(errors="replace").splitlines() if line.startswith("[GNUPG:] ")]
    if checked.returncode != 0 or any(fields[1] in ("BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG") for fields in status):
        return ""
    # VALIDSIG <key fpr> <date> <timestamp> <expires> <version> <reserved> <algo> <hash> <class> <primary fpr>
    valid = [fields[-1] for fields in status if fields[1] == "VALIDSIG" and len(fields) >= 12]
    return valid[0] if len(set(valid)) == 1 else ""


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"

