"""The sophon_apt role's check of the bundle's apt repository against one host, on the control node: the
repository is there (its release.yml, archive and signing key), was built for this host's release and
architecture (.debs resolved for one release only install cleanly on that release), and a host that pulls
from the mirror has one to pull from.

Imported by the role's action plugin (action_plugins/sophon_apt_bundle_check.py) and by the unit tests
(tests/unit/roles/sophon_apt). Stdlib only. The role's tests assert the messages' text.
"""

# Debian names the architecture Ansible calls x86_64 amd64; the bundle records Debian's name.
DEBIAN_ARCHITECTURE = {"x86_64": "amd64"}


def bundle_problems(host, release, archive_present, key_present, bundle_dir, signing_key, host_release,
                    host_architecture, transport, mirror_url):
    """release: the repository's release.yml as read on the control node (a mapping with codename and
    architecture, anything else when unreadable); archive_present, key_present: whether <bundle_dir>.tar and
    the signing key are files there; host_release, host_architecture: the host's facts."""
    out = []
    present = isinstance(release, dict) and archive_present and key_present
    if not present:
        out.append("sophon_apt_source is bundle but %s/release.yml, %s.tar or %s is missing on the control node. "
                   "Run `make bundle` where Debian packages can be downloaded (or set sophon_apt_source: mirror for "
                   "hosts that reach a mirror) and rerun." % (bundle_dir, bundle_dir, signing_key))
    elif (host_release != release.get("codename")
          or DEBIAN_ARCHITECTURE.get(host_architecture, host_architecture) != release.get("architecture")):
        out.append("%s runs %s/%s, but the bundle's apt repository was built on %s/%s. Build the bundle on a "
                   "control node of the hosts' release, or set sophon_apt_source: mirror for this host."
                   % (host, host_release, host_architecture, release.get("codename"), release.get("architecture")))
    if transport == "mirror" and not mirror_url:
        out.append("%s: sophon_sd_bundle_transport is mirror, but no mirror is set: add a host to the inventory "
                   "group bundle_mirror or set sophon_sd_bundle_mirror_url, or set sophon_sd_bundle_transport: push "
                   "for this host." % host)
    return out
