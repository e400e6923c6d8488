#!/bin/sh
# certunnel-renew.sh — renew a device certificate with nothing but a POSIX
# shell, OpenSSH's ssh-keygen and curl (for devices without Node).
#
#   certunnel-renew.sh --url https://broker:8443 --pin 'sha256//…' \
#       --device-id dev_… --key /var/lib/certunnel/device_key \
#       [--out /var/lib/certunnel/device_key-cert.pub] [--grant FILE] \
#       [--capabilities trust-set-v1,…]
#
# --grant FILE: the broker's whole answer (JSON) is written there too, for a
# caller that wants more than the certificate (certunnel-agent.sh reads the
# SSH endpoints and the trust set from it).
# --pin may list several pins, "sha256//a;sha256//b" (curl's --pinnedpubkey
# list): the broker's TLS key during a rotation may be either.
# --capabilities: what the calling agent can do, sent as `capabilities`; a
# broker before 0.5 refuses the unknown field, and the request is sent once
# more without it ("capabilities refused" is printed, for the caller to
# remember).
# The request is signed in the SSHSIG format (ssh-keygen -Y sign, namespace
# certunnel-renew) over the same text the broker rebuilds from the fields,
# with a timestamp and a fresh nonce against replay. The broker's TLS key is
# pinned (curl --pinnedpubkey): nothing is sent to a broker that does not
# hold the pinned key. Exit status: 0 renewed, 2 usage, 3 refused by the
# broker (its error code is printed), 4 transport failure.
set -eu

url= pin= device_id= key= out= grant= capabilities=
while [ $# -gt 0 ]; do
  case "$1" in
    --url) url=$2; shift 2 ;;
    --pin) pin=$2; shift 2 ;;
    --device-id) device_id=$2; shift 2 ;;
    --key) key=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --grant) grant=$2; shift 2 ;;
    --capabilities) capabilities=$2; shift 2 ;;
    *) echo "certunnel-renew: unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$url" ] || [ -z "$device_id" ] || [ -z "$key" ]; then
  echo "usage: certunnel-renew.sh --url URL --pin PIN --device-id ID --key KEYFILE [--out CERTFILE] [--grant FILE]" >&2
  exit 2
fi
[ -n "$out" ] || out="$key-cert.pub"
case "$device_id" in *[!A-Za-z0-9_]*) echo "certunnel-renew: bad device id" >&2; exit 2 ;; esac
case "$capabilities" in *[!a-z0-9,-]*) echo "certunnel-renew: bad capabilities" >&2; exit 2 ;; esac
case "$pin" in *[!A-Za-z0-9+/=\;]*) echo "certunnel-renew: bad pin" >&2; exit 2 ;; esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

timestamp=$(date +%s)
nonce=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
printf 'certunnel-renew-v1\ndevice %s\ntimestamp %s\nnonce %s\nnew-key -\n' "$device_id" "$timestamp" "$nonce" >"$tmp/msg"
ssh-keygen -q -Y sign -f "$key" -n certunnel-renew "$tmp/msg" </dev/null >/dev/null 2>"$tmp/err" || {
  echo "certunnel-renew: ssh-keygen could not sign: $(cat "$tmp/err")" >&2
  exit 4
}
# The armored signature is base64 lines: JSON-escape its newlines.
signature=$(awk '{ printf "%s\\n", $0 }' "$tmp/msg.sig")
caps_json=
[ -n "$capabilities" ] && caps_json=",\"capabilities\":[\"$(printf '%s' "$capabilities" | sed 's/,/","/g')\"]"
printf '{"deviceId":"%s","timestamp":%s,"nonce":"%s","signature":"%s"%s}' \
  "$device_id" "$timestamp" "$nonce" "$signature" "$caps_json" >"$tmp/body"

set -- -sS -o "$tmp/resp" -w '%{http_code}' --max-time 30 \
  -H 'content-type: application/json' --data-binary "@$tmp/body"
if [ -n "$pin" ]; then
  # -k: trust comes from the pinned key, not from a CA store.
  set -- "$@" -k --pinnedpubkey "$pin"
fi
status=$(curl "$@" "$url/v1/renew" 2>"$tmp/err") || {
  echo "certunnel-renew: cannot reach the broker: $(cat "$tmp/err")" >&2
  exit 4
}
# A broker before 0.5: "body: unknown field(s): capabilities". The signature does not cover the field.
if [ "$status" = 400 ] && [ -n "$caps_json" ] && grep -q '"code":"BAD_REQUEST"' "$tmp/resp" && grep -q 'unknown field(s):[^"]*capabilities' "$tmp/resp"; then
  echo "certunnel-renew: capabilities refused by the broker; sent again without" >&2
  printf '{"deviceId":"%s","timestamp":%s,"nonce":"%s","signature":"%s"}' "$device_id" "$timestamp" "$nonce" "$signature" >"$tmp/body"
  status=$(curl "$@" "$url/v1/renew" 2>"$tmp/err") || {
    echo "certunnel-renew: cannot reach the broker: $(cat "$tmp/err")" >&2
    exit 4
  }
fi
if [ "$status" != 200 ]; then
  code=$(sed -n 's/.*"code":"\([A-Z_]*\)".*/\1/p' "$tmp/resp")
  echo "certunnel-renew: refused: ${code:-HTTP_$status}" >&2
  exit 3
fi
cert=$(sed -n 's/.*"certificate":"\([^"]*\)".*/\1/p' "$tmp/resp")
valid_before=$(sed -n 's/.*"validBefore":"\([^"]*\)".*/\1/p' "$tmp/resp")
case "$cert" in ssh-ed25519-cert-v01@openssh.com\ *) ;; *) echo "certunnel-renew: no certificate in the answer" >&2; exit 4 ;; esac
# Write beside the target and rename: a reader never sees half a certificate.
printf '%s\n' "$cert" >"$out.tmp.$$"
chmod 0644 "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
if [ -n "$grant" ]; then
  cp "$tmp/resp" "$grant.tmp.$$" && mv -f "$grant.tmp.$$" "$grant"
fi
echo "certunnel-renew: renewed; valid until $valid_before"
