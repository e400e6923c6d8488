#!/bin/sh
# dev-device.sh: a throwaway device on this machine, for docs/walkthrough.md
# and for trying certunnel without a board.
#
#   dev-device.sh image ROOT
#       A minimal device image root for `certunnel provision flash`:
#       ROOT/etc/passwd and ROOT/etc/group with a certunnel-agent user, and
#       ROOT/usr/bin/certunnel, which runs the certunnel on your PATH.
#
#   dev-device.sh start DIR [--ssh-port N] [--http-port N] [--name NAME] [--authorized-key FILE]...
#       The device's own services, on 127.0.0.1 only, everything in DIR:
#       - an OpenSSH sshd on --ssh-port (default 2022) with its own host key
#         and config; it lets in the user running this script, with the
#         keys given by --authorized-key (public key files) in
#         DIR/authorized_keys, and nothing else (no passwords);
#       - a web page on --http-port (default 8080) that answers
#         "NAME status: ok" (NAME default "device"; node serves it).
#       These are what the device's agent forwards (its `services`); the
#       agent itself runs as usual: `certunnel agent run --config …`.
#
#   dev-device.sh stop DIR
#       Stops that sshd and web page, and removes DIR.
#
# As root, sshd needs its privilege-separation directory /run/sshd (made
# here) and lets root in with a key; the image's certunnel-agent is uid 998
# (no user is created on this machine: flash only chowns files in the image).
# As a normal user, sshd can only let that same user in, and the image's
# certunnel-agent is that user's uid, so that flash can give it its files.
# OpenSSH refuses an account it takes for locked (seen as `nobody`: "User
# nobody not allowed because account is locked"); use a login account.
#
# The broker needs nothing special for such a device when it listens on
# 127.0.0.1 (`certunnel init --ssh-listen 127.0.0.1:2222 --api-listen
# 127.0.0.1:8443`): it then tells devices to reach 127.0.0.1; a broker
# listening on every address needs CERTUNNEL_SSH_PUBLIC_HOST=127.0.0.1.
set -eu

SSHD=/usr/sbin/sshd # sshd re-executes itself and insists on an absolute path
MARK=.certunnel-dev-device

die() {
  printf 'dev-device.sh: %s\n' "$*" >&2
  exit 2
}

usage() {
  sed -n '2,22s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

# Absolute path of $1 (which must exist).
abspath() {
  (cd "$1" && pwd -P)
}

# Waits up to 15 s for file $1 to exist and be non-empty.
wait_for_file() {
  i=0
  while [ ! -s "$1" ]; do
    i=$((i + 1))
    [ "$i" -le 150 ] || return 1
    sleep 0.1
  done
}

cmd_image() {
  [ $# -eq 1 ] || usage
  root=$1
  certunnel_path=$(command -v certunnel) || die "certunnel is not on your PATH (the image's /usr/bin/certunnel runs it)"
  case $certunnel_path in
    /*) ;;
    *) die "certunnel on your PATH is not a program ($certunnel_path): put a script or a link to it on the PATH" ;;
  esac
  if [ "$(id -u)" -eq 0 ]; then
    uid=998 gid=998
  else
    uid=$(id -u) gid=$(id -g)
  fi
  mkdir -p "$root/etc" "$root/usr/bin"
  printf 'root:x:0:0:root:/root:/bin/sh\ncertunnel-agent:x:%s:%s:certunnel agent:/var/lib/certunnel:/usr/sbin/nologin\n' "$uid" "$gid" >"$root/etc/passwd"
  printf 'root:x:0:\ncertunnel-agent:x:%s:\n' "$gid" >"$root/etc/group"
  printf '#!/bin/sh\nexec %s "$@"\n' "$certunnel_path" >"$root/usr/bin/certunnel"
  chmod 0755 "$root/usr/bin/certunnel"
  printf 'device image root %s: certunnel-agent is uid %s, /usr/bin/certunnel runs %s\n' "$root" "$uid" "$certunnel_path"
  printf '  flash it:   certunnel provision flash --bundle BUNDLE --root %s\n' "$root"
  printf '  then run:   certunnel agent run --config %s/etc/certunnel/agent.json --state-dir %s/var/lib/certunnel --token-file %s/etc/certunnel/enroll-token\n' "$root" "$root" "$root"
}

cmd_start() {
  [ $# -ge 1 ] || usage
  dir=$1
  shift
  ssh_port=2022 http_port=8080 name=device keys=
  while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in
      --ssh-port) ssh_port=$2 ;;
      --http-port) http_port=$2 ;;
      --name) name=$2 ;;
      --authorized-key)
        [ -r "$2" ] || die "cannot read the public key file $2"
        keys="$keys $2"
        ;;
      *) usage ;;
    esac
    shift 2
  done
  [ -x "$SSHD" ] || die "$SSHD is missing (Debian: apt-get install openssh-server)"
  command -v node >/dev/null || die "node is not on your PATH (it serves the web page)"
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    die "$dir exists and is not empty"
  fi
  mkdir -p "$dir"
  chmod 0700 "$dir"
  dir=$(abspath "$dir")
  : >"$dir/$MARK"
  user=$(id -un)
  if [ "$(id -u)" -eq 0 ]; then
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
  fi

  ssh-keygen -q -t ed25519 -N '' -C "$name host key" -f "$dir/ssh_host_ed25519_key"
  : >"$dir/authorized_keys"
  for key in $keys; do
    cat "$key" >>"$dir/authorized_keys"
  done
  chmod 0600 "$dir/authorized_keys"
  cat >"$dir/sshd_config" <<EOF
# A throwaway device sshd (scripts/dev-device.sh): loopback only, keys only.
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $user
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# DIR may be under /tmp, which StrictModes rejects (world-writable).
StrictModes no
X11Forwarding no
PrintMotd no
EOF
  # sshd forks into the background, then listens, then writes its pid file.
  "$SSHD" -f "$dir/sshd_config" -E "$dir/sshd.log" || die "sshd did not start: $(cat "$dir/sshd.log" 2>/dev/null)"
  wait_for_file "$dir/sshd.pid" || die "sshd did not start listening on 127.0.0.1:$ssh_port: $(cat "$dir/sshd.log")"

  # The device's web page: node writes its pid file once it listens.
  # shellcheck disable=SC2016 # the program is JavaScript: its ${…} are not the shell's
  DEV_NAME=$name DEV_PORT=$http_port DEV_PID=$dir/web.pid nohup node -e '
    const fs = require("node:fs");
    const server = require("node:http").createServer((req, res) => {
      res.setHeader("content-type", "text/plain");
      res.end(`${process.env.DEV_NAME} status: ok\n`);
    });
    server.listen(Number(process.env.DEV_PORT), "127.0.0.1", () => fs.writeFileSync(process.env.DEV_PID, String(process.pid)));
  ' </dev/null >"$dir/web.log" 2>&1 &
  wait_for_file "$dir/web.pid" || {
    kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true
    die "the web page did not start on 127.0.0.1:$http_port: $(cat "$dir/web.log")"
  }

  printf 'device %s in %s\n' "$name" "$dir"
  printf '  sshd      127.0.0.1:%s (pid %s), user %s, keys in %s/authorized_keys\n' "$ssh_port" "$(cat "$dir/sshd.pid")" "$user" "$dir"
  printf '  web page  http://127.0.0.1:%s/ (pid %s)\n' "$http_port" "$(cat "$dir/web.pid")"
  printf '  stop with: %s stop %s\n' "$0" "$dir"
}

# Sends TERM to the pid in file $1 and waits up to 5 s for it to go.
stop_pid_file() {
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  i=0
  while kill -0 "$pid" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 50 ]; then
      kill -9 "$pid" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
}

cmd_stop() {
  [ $# -eq 1 ] || usage
  dir=$1
  [ -d "$dir" ] || die "$dir: no such directory"
  [ -e "$dir/$MARK" ] || die "$dir was not made by dev-device.sh start; not touching it"
  stop_pid_file "$dir/sshd.pid"
  stop_pid_file "$dir/web.pid"
  rm -rf "$dir"
  printf 'stopped the device in %s and removed it\n' "$dir"
}

[ $# -ge 1 ] || usage
command=$1
shift
case $command in
  image) cmd_image "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  *) usage ;;
esac
