#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) for building and testing rce-guard:
#   - bookworm packages: runc 1.1.5, crun 1.8.1, busybox-static, protoc (for the CRI client
#     used by the tests), gcc (pause image), iproute2;
#   - containerd 1.7.x from trixie (NRI api 0.6.1) and 2.1.x from sid (NRI api 0.8.0), unpacked
#     side by side under $RCE_GUARD_E2E_ROOT without installing either, so that nothing else
#     on the machine (libc, base-files) moves;
#   - the busybox and pause test images as OCI archives (no registry is reachable here).
# Idempotent: re-running it only redoes what is missing.
set -euo pipefail

E2E_ROOT=${RCE_GUARD_E2E_ROOT:-/opt/rce-guard-e2e}
HERE=$(cd "$(dirname "$0")" && pwd)

log() { printf '[setup] %s\n' "$*" >&2; }

need_apt_update=1
apt_update_once() {
  if [ "$need_apt_update" = 1 ]; then
    apt-get update -qq
    need_apt_update=0
  fi
}

# 1. Newer suites, pinned low so that only what we name explicitly comes from them.
if [ ! -f /etc/apt/sources.list.d/rce-guard-newer.sources ]; then
  log "adding trixie and sid sources (pinned at priority 50)"
  cat > /etc/apt/sources.list.d/rce-guard-newer.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  cat > /etc/apt/preferences.d/rce-guard-newer <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 50

Package: *
Pin: release n=sid
Pin-Priority: 50
PIN
fi

# 2. Packages from bookworm.
pkgs=(runc crun busybox-static protobuf-compiler gcc libc6-dev iproute2 procps ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt_update_once
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. Two containerds, unpacked side by side.
mkdir -p "$E2E_ROOT"
unpack_containerd() { # suite dir-name
  local suite=$1 dest=$E2E_ROOT/$2
  if [ -x "$dest/usr/bin/containerd" ]; then return; fi
  log "unpacking containerd from $suite into $dest"
  apt_update_once
  local tmp; tmp=$(mktemp -d)
  # apt downloads as the unprivileged _apt user: it must be able to write here.
  chmod 0755 "$tmp"
  if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
  (cd "$tmp" && apt-get download -qq "containerd/$suite" >/dev/null)
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  dpkg-deb -x "$tmp"/containerd_*.deb "$dest.tmp"
  rm -rf "$tmp" "$dest" && mv "$dest.tmp" "$dest"
}
unpack_containerd trixie containerd-1.7
unpack_containerd sid containerd-2.1
for d in containerd-1.7 containerd-2.1; do
  log "$d: $("$E2E_ROOT/$d/usr/bin/containerd" --version)"
done

# 4. Test images.
"$HERE/build-images.sh" "$E2E_ROOT/images"
log "done: runtimes and images under $E2E_ROOT"
