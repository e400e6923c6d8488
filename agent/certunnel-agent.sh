#!/bin/sh
# certunnel-agent.sh — the device agent for devices without Node: a POSIX
# shell, OpenSSH (ssh, ssh-keygen), curl, and the usual base tools (sed,
# awk, od, grep). Same state directory layout and exit statuses as
# `certunnel agent`, so `certunnel agent status` can read it too.
#
#   certunnel-agent.sh enroll --url URL [--pin PIN] --state-dir DIR
#         [--token-file FILE] [--name NAME] [--force]     (or CERTUNNEL_ENROLL_TOKEN)
#   certunnel-agent.sh run --state-dir DIR [--service SLOT:HOST:PORT]...
#         [--keepalive SECONDS] [--backoff-cap SECONDS] [--poll SECONDS]
#
# enroll: ssh-keygen makes the device key (0600; it never leaves the device),
# curl sends the public key and the token (in a request body file, never on a
# command line) to the pinned broker, and the grant is stored: certificate,
# port block, SSH endpoints, known_hosts with the broker's host key and host CA
# for each endpoint.
#
# Trust set (brokers from 0.5, issue #14): with jq on the device the agent
# says so (capabilities ["trust-set-v1"]), stores the grant's `trust` (host
# keys, host CAs, API pins; checked strictly, a malformed one is refused
# with TRUST_INVALID and the previous kept) and accepts any member: every
# host key and an @cert-authority line per host CA in known_hosts, every pin
# for curl. A host key outside the set costs one renewal (to learn a
# rotation the device slept through), never an acceptance. Without jq, or
# with a broker before 0.5, the grant's ssh.hostKey, hostCertificateAuthority
# and the configured pin are the whole trust, as before.
#
# run: keeps `ssh -N -R 127.0.0.1:P:host:port …` up in a loop (strict
# known_hosts, never trust on first use; ExitOnForwardFailure; server alive
# keepalives), renews the certificate with certunnel-renew.sh (ssh-keygen -Y
# sign + curl) at about two thirds of its life and reconnects with it, backs
# off with full jitter between attempts, and stops for good when the broker
# says the device is revoked. With several SSH endpoints (the nodes of a
# fleet; renewal may change the list) each round dials them in a random
# order and backs off only when all failed; a tunnel that drops moves on to
# another endpoint at once, once, before backing off. Default services: slot 0 -> 127.0.0.1:22,
# slot 1 -> 127.0.0.1:80; any --service replaces them.
#
# Exit status: 0 stopped (TERM/INT), 1 error, 3 usage, 4 not enrolled,
# 10 revoked, 11 refused for good (bad or used token, re-enrollment needed).
set -u

EXIT_ERROR=1 EXIT_USAGE=3 EXIT_NOT_ENROLLED=4 EXIT_REVOKED=10 EXIT_REFUSED=11

here=$(cd "$(dirname "$0")" && pwd)
renew_script=${CERTUNNEL_RENEW_SCRIPT:-$here/certunnel-renew.sh}

now() { date +%s; }
iso_now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# One JSON line per event on stdout. Messages never hold a token, a key or a certificate.
log() { # level event message [extra json fields, already formatted: ,"k":"v"]
  printf '{"time":"%s","level":"%s","service":"certunnel-agent-sh","event":"%s","msg":"%s"%s}\n' "$(iso_now)" "$1" "$2" "$3" "${4:-}"
}

die() { # status code message
  printf 'certunnel-agent: %s: %s\n' "$2" "$3" >&2
  exit "$1"
}

# A number in [0, 65535] from the kernel's generator (srand() would give every
# device that boots in the same second the same "random" delays).
random16() { od -An -N2 -tu2 /dev/urandom | tr -d ' \n'; }

# "YYYY-MM-DDTHH:MM:SS" (UTC) -> seconds since the epoch (days from civil, proleptic Gregorian).
iso_to_epoch() {
  echo "$1" | awk -F'[-T:Z.]' '{
    y = $1 + 0; m = $2 + 0; d = $3 + 0
    if (m <= 2) { y -= 1; m += 12 }
    days = 365 * y + int(y / 4) - int(y / 100) + int(y / 400) + int((153 * (m - 3) + 2) / 5) + d - 719469
    printf "%.0f\n", days * 86400 + $4 * 3600 + $5 * 60 + $6
  }'
}

# Seconds since the epoch -> "YYYY-MM-DDTHH:MM:SS.000Z" (civil from days; no GNU date needed).
epoch_to_iso() {
  echo "$1" | awk '{
    s = $1 % 86400; z = ($1 - s) / 86400 + 719468
    era = int(z / 146097); doe = z - era * 146097
    yoe = int((doe - int(doe / 1460) + int(doe / 36524) - int(doe / 146096)) / 365)
    doy = doe - (365 * yoe + int(yoe / 4) - int(yoe / 100)); mp = int((5 * doy + 2) / 153)
    d = doy - int((153 * mp + 2) / 5) + 1; m = mp < 10 ? mp + 3 : mp - 9; y = yoe + era * 400 + (m <= 2)
    printf "%04d-%02d-%02dT%02d:%02d:%02d.000Z\n", y, m, d, int(s / 3600), int(s % 3600 / 60), s % 60
  }'
}

json_str() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" "$2" | head -n 1; }
json_num() { sed -n "s/.*\"$1\":\\([0-9][0-9]*\\).*/\\1/p" "$2" | head -n 1; }

# Whether an error answer (FILE) is an older broker's refusal of the capabilities field itself.
refuses_capabilities() { # file
  [ "$(json_str code "$1")" = BAD_REQUEST ] && json_str message "$1" | grep -q 'unknown field(s):.*capabilities'
}

# The SSH endpoints of a grant or state.json (one line of JSON): "HOST:PORT"
# words, or nothing when there is no sshEndpoints (an older broker or agent).
# Returns 1 when the list has an entry that is not a plain host and port
# (anything else would end up in known_hosts and on ssh's command line).
json_endpoints() { # file
  list=$(sed -n 's/.*"sshEndpoints":\[\([^]]*\)\].*/\1/p' "$1" | head -n 1)
  [ -n "$list" ] || return 0
  n=$(printf '%s' "$list" | tr '}' '\n' | grep -c '"host"')
  words=$(printf '%s' "$list" | tr '}' '\n' |
    sed -n 's/.*"host":"\([A-Za-z0-9._:][A-Za-z0-9._:-]*\)","port":\([1-9][0-9]\{0,4\}\)$/\1:\2/p' | tr '\n' ' ')
  set -- $words
  [ $# -eq "$n" ] && [ $# -ge 1 ] || return 1
  for w in "$@"; do [ "${w##*:}" -le 65535 ] || return 1; done
  echo "$*"
}

# ENDPOINTS with SSH_HOST:SSH_PORT first if it is not among them (a state.json from before the list has only that one).
with_ssh_endpoint() {
  case " $endpoints " in *" $ssh_host:$ssh_port "*) echo "$endpoints" ;; *) echo "$ssh_host:$ssh_port${endpoints:+ $endpoints}" ;; esac
}

# HOST:PORT words in a random order, one per line.
shuffle() {
  for w in "$@"; do printf '%s %s\n' "$(random16)" "$w"; done | sort -n | cut -d' ' -f2-
}

# "host:port" as people read it: IPv6 in brackets.
show_endpoint() { # host:port
  h=${1%:*}
  case "$h" in *:*) printf '[%s]:%s' "$h" "${1##*:}" ;; *) printf '%s' "$1" ;; esac
}

# ---------------------------------------------------------------------------
# The broker's trust set (needs jq; without it the agent keeps to ssh.hostKey
# and ssh.hostCertificateAuthority, as before 0.5).

have_jq() { command -v jq >/dev/null 2>&1; }

# What the agent tells the broker it can do: a JSON fragment for a request body.
capabilities_json() {
  have_jq && [ -z "${no_capabilities:-}" ] && printf ',"capabilities":["trust-set-v1"]'
}

# The `trust` of a grant or state.json (FILE), checked and normalized (key
# lines without comments, duplicates dropped, order kept), as one line of
# JSON; nothing when there is none (an older broker) or no jq. Returns 1 when
# it is malformed: 1 to 4 Ed25519 key lines each that ssh-keygen reads, 0 to
# 4 sha256// pins. \A and \z, not ^ and $: those match at a newline inside.
parse_trust() { # file
  have_jq || return 0
  t=$(jq -c '
    def keys_ok: type == "array" and length >= 1 and length <= 4
      and all(.[]; type == "string" and length <= 8192 and test("\\Assh-ed25519 [A-Za-z0-9+/]+={0,2}( [ -~]*)?\\z"));
    def pins_ok: type == "array" and length <= 4 and all(.[]; type == "string" and test("\\Asha256//[A-Za-z0-9+/]{43}=\\z"));
    def uniq: reduce .[] as $x ([]; if any(.[]; . == $x) then . else . + [$x] end);
    if has("trust") | not then empty
    elif (.trust | type) == "object" and (.trust.hostKeys | keys_ok) and (.trust.hostCertificateAuthorities | keys_ok) and (.trust.apiPins | pins_ok)
    then .trust | {
      hostKeys: [.hostKeys[] | split(" ")[0:2] | join(" ")] | uniq,
      hostCertificateAuthorities: [.hostCertificateAuthorities[] | split(" ")[0:2] | join(" ")] | uniq,
      apiPins: .apiPins | uniq }
    else "malformed" end' "$1" 2>/dev/null) || return 1
  [ "$t" = '"malformed"' ] && return 1
  [ -n "$t" ] || return 0
  # Every key must be one ssh-keygen reads (the pattern only says it looks like one).
  kf=$(mktemp) || return 1
  for k in $(printf '%s' "$t" | jq -r '(.hostKeys + .hostCertificateAuthorities)[] | split(" ")[1]'); do
    printf 'ssh-ed25519 %s\n' "$k" >"$kf"
    ssh-keygen -l -f "$kf" >/dev/null 2>&1 || { rm -f "$kf"; return 1; }
  done
  rm -f "$kf"
  printf '%s\n' "$t"
}

# Lines of FIELD (hostKeys | hostCertificateAuthorities) the agent accepts:
# FIRST (ssh's own) and the trust set's, without comments or duplicates.
trusted_lines() { # field first
  { printf '%s\n' "$2"; [ -n "${trust_json:-}" ] && printf '%s' "$trust_json" | jq -r ".$1[]"; } | cut -d' ' -f1,2 | awk 'NF && !seen[$0]++'
}

# The pins curl accepts ("a;b", --pinnedpubkey's list): the configured one and the trust set's; none without a configured pin.
api_pins() {
  [ -n "$pin" ] || return 0
  { printf '%s\n' "$pin"; [ -n "${trust_json:-}" ] && printf '%s' "$trust_json" | jq -r '.apiPins[]'; } |
    awk 'NF && !seen[$0]++ { printf "%s%s", (n++ ? ";" : ""), $0 }'
}

# Counts for the trust_changed event (never the keys).
trust_counts_json() {
  printf '{"hostKeys":%s,"hostCertificateAuthorities":%s,"apiPins":%s}' \
    "$(trusted_lines hostKeys "$host_key" | wc -l | tr -d ' ')" "$(trusted_lines hostCertificateAuthorities "$host_ca" | wc -l | tr -d ' ')" \
    "$(api_pins | tr ';' '\n' | grep -c .)"
}

# ---------------------------------------------------------------------------
# enroll

known_hosts_pattern() { # host port
  if [ "$2" = 22 ]; then printf '%s' "$1"; else printf '[%s]:%s' "$1" "$2"; fi
}

# known_hosts: every trusted host key and an @cert-authority line per host CA
# (the trust set's, or the pinned key and host CA alone), for every endpoint
# (comma-separated patterns).
write_known_hosts() { # state-dir  (reads host_key, host_ca, trust_json, ssh_host, ssh_port, endpoints)
  patterns=
  for e in $(with_ssh_endpoint); do patterns="$patterns${patterns:+,}$(known_hosts_pattern "${e%:*}" "${e##*:}")"; done
  {
    trusted_lines hostKeys "$host_key" | while read -r k; do printf '%s %s certunnel-broker\n' "$patterns" "$k"; done
    trusted_lines hostCertificateAuthorities "$host_ca" | while read -r k; do printf '@cert-authority %s %s certunnel-host-ca\n' "$patterns" "$k"; done
  } >"$1/known_hosts.tmp.$$" && chmod 0644 "$1/known_hosts.tmp.$$" && mv -f "$1/known_hosts.tmp.$$" "$1/known_hosts"
}

write_state() { # state-dir enrolled-at renewed-at  (reads the globals set from a grant)
  endpoints_json=
  if [ -n "$endpoints" ]; then
    for e in $endpoints; do endpoints_json="$endpoints_json${endpoints_json:+,}{\"host\":\"${e%:*}\",\"port\":${e##*:}}"; done
    endpoints_json="\"sshEndpoints\":[$endpoints_json],"
  fi
  pin_json=
  [ -n "$pin" ] && pin_json=",\"pin\":\"$pin\""
  name_json=null
  [ -n "$name" ] && name_json="\"$name\""
  renewed_json=null
  [ -n "$3" ] && renewed_json="\"$3\""
  trust_field=
  [ -n "${trust_json:-}" ] && trust_field=",\"trust\":$trust_json"
  printf '{"version":1,"deviceId":"%s","name":%s,"ports":{"first":%s,"last":%s},%s"ssh":{"host":"%s","port":%s,"username":"%s","hostKey":"%s","hostCertificateAuthority":"%s"}%s,"broker":{"url":"%s"%s},"serial":"%s","validAfter":"%s","validBefore":"%s","renewAfter":"%s","enrolledAt":"%s","renewedAt":%s}\n' \
    "$device_id" "$name_json" "$first" "$last" "$endpoints_json" "$ssh_host" "$ssh_port" "$ssh_user" "$host_key" "$host_ca" "$trust_field" "$url" "$pin_json" \
    "$serial" "$valid_after" "$valid_before" "$renew_after" "$2" "$renewed_json" >"$1/state.json.tmp.$$"
  chmod 0644 "$1/state.json.tmp.$$"
  mv -f "$1/state.json.tmp.$$" "$1/state.json"
}

cmd_enroll() {
  url= pin= state= token_file= name= force=
  while [ $# -gt 0 ]; do
    case "$1" in
      --url) url=$2; shift 2 ;;
      --pin) pin=$2; shift 2 ;;
      --state-dir) state=$2; shift 2 ;;
      --token-file) token_file=$2; shift 2 ;;
      --name) name=$2; shift 2 ;;
      --force) force=1; shift ;;
      *) die $EXIT_USAGE BAD_ARGUMENT "unknown argument: $1" ;;
    esac
  done
  [ -n "$url" ] && [ -n "$state" ] || die $EXIT_USAGE BAD_ARGUMENT 'usage: certunnel-agent.sh enroll --url URL [--pin PIN] --state-dir DIR [--token-file FILE] [--name NAME] [--force]'
  case "$url" in https://*|http://*) ;; *) die $EXIT_USAGE BAD_ARGUMENT '--url must be an http(s) URL' ;; esac
  case "$url$pin" in *'"'*|*'\'*|*' '*) die $EXIT_USAGE BAD_ARGUMENT 'bad characters in --url or --pin' ;; esac
  case "$name" in *[!A-Za-z0-9-]*) die $EXIT_USAGE BAD_ARGUMENT '--name: letters, digits and dashes' ;; esac
  if [ -n "$token_file" ]; then token=$(cat "$token_file") || die $EXIT_USAGE BAD_ARGUMENT "cannot read $token_file"
  else token=${CERTUNNEL_ENROLL_TOKEN:-}; fi
  [ -n "$token" ] || die $EXIT_USAGE BAD_ARGUMENT 'no token: --token-file or CERTUNNEL_ENROLL_TOKEN'
  case "$token" in *[!A-Za-z0-9_-]*) die $EXIT_USAGE BAD_ARGUMENT 'the token has unexpected characters' ;; esac

  umask 077
  mkdir -p "$state" && chmod 0700 "$state" || die $EXIT_ERROR STATE_INVALID "cannot create $state"
  if [ -f "$state/state.json" ] && [ -z "$force" ]; then
    die $EXIT_ERROR ALREADY_ENROLLED "$state is already enrolled; use --force to replace that enrollment"
  fi
  tmp=$(mktemp -d) || die $EXIT_ERROR INTERNAL 'mktemp failed'
  # The pending key is kept when the broker may have answered unheard (no answer, a 5xx): the next
  # attempt presents it again with the same token and gets the same device. A refusal drops it.
  keep_pending=
  trap 'rm -rf "$tmp"; [ -n "$keep_pending" ] || rm -f "$state/device_key.pending" "$state/device_key.pending.pub"' EXIT
  # Not enrolled, a key in place is an interrupted enrollment's (with --force it is the working one's).
  if [ -z "$force" ] && [ ! -f "$state/device_key.pending" ] && [ -f "$state/device_key" ] && [ -f "$state/device_key.pub" ]; then
    mv -f "$state/device_key" "$state/device_key.pending" && mv -f "$state/device_key.pub" "$state/device_key.pending.pub"
  fi
  if [ ! -f "$state/device_key.pending" ] || [ ! -f "$state/device_key.pending.pub" ]; then
    rm -f "$state/device_key.pending" "$state/device_key.pending.pub"
    ssh-keygen -q -t ed25519 -N '' -C 'certunnel device key' -f "$state/device_key.pending" </dev/null >/dev/null 2>"$tmp/err" ||
      die $EXIT_ERROR INTERNAL "ssh-keygen failed: $(cat "$tmp/err")"
  fi
  pubkey=$(cut -d' ' -f1,2 "$state/device_key.pending.pub")
  name_field=
  [ -n "$name" ] && name_field=",\"name\":\"$name\""
  no_capabilities= trust_json=
  printf '{"token":"%s","publicKey":"%s"%s%s}' "$token" "$pubkey" "$name_field" "$(capabilities_json)" >"$tmp/body"

  set -- -sS -o "$tmp/resp" -w '%{http_code}' --max-time 30 -H 'content-type: application/json' --data-binary "@$tmp/body"
  # -k: trust comes from the pinned key, not from a CA store.
  [ -n "$pin" ] && set -- "$@" -k --pinnedpubkey "$pin"
  keep_pending=1
  status=$(curl "$@" "$url/v1/enroll" 2>"$tmp/err") || die $EXIT_ERROR UNREACHABLE "cannot reach the broker: $(cat "$tmp/err")"
  if [ "$status" = 400 ] && refuses_capabilities "$tmp/resp" && grep -q '"capabilities"' "$tmp/body"; then
    # A broker before 0.5 refuses fields it does not know: once more without.
    no_capabilities=1
    printf '{"token":"%s","publicKey":"%s"%s}' "$token" "$pubkey" "$name_field" >"$tmp/body"
    status=$(curl "$@" "$url/v1/enroll" 2>"$tmp/err") || die $EXIT_ERROR UNREACHABLE "cannot reach the broker: $(cat "$tmp/err")"
  fi
  if [ "$status" != 201 ] && [ "$status" != 200 ]; then
    code=$(json_str code "$tmp/resp")
    case "$code" in
      TOKEN_*|KEY_*|NAME_TAKEN|BAD_REQUEST) keep_pending=; die $EXIT_REFUSED "$code" 'enrollment refused by the broker' ;;
      *) die $EXIT_ERROR "${code:-HTTP_$status}" 'enrollment failed' ;;
    esac
  fi
  keep_pending=
  r=$tmp/resp
  device_id=$(json_str deviceId "$r") cert=$(json_str certificate "$r") serial=$(json_str serial "$r")
  first=$(json_num first "$r") last=$(json_num last "$r")
  valid_after=$(json_str validAfter "$r") valid_before=$(json_str validBefore "$r") renew_after=$(json_str renewAfter "$r")
  ssh_host=$(json_str host "$r") ssh_port=$(json_num port "$r") ssh_user=$(json_str username "$r")
  host_key=$(json_str hostKey "$r") host_ca=$(json_str hostCertificateAuthority "$r")
  endpoints=$(json_endpoints "$r") || die $EXIT_ERROR GRANT_INVALID 'the broker sent an unusable list of SSH endpoints'
  if ! trust_json=$(parse_trust "$r"); then
    trust_json=
    echo 'certunnel-agent: TRUST_INVALID: the broker sent a malformed trust set; trusting its ssh host key and host CA alone' >&2
  fi
  case "$ssh_host" in ''|-*|*[!A-Za-z0-9._:-]*) die $EXIT_ERROR GRANT_INVALID 'the broker sent an unusable SSH host' ;; esac
  granted_name=$(json_str name "$r")
  [ -n "$granted_name" ] && name=$granted_name
  case "$cert" in ssh-ed25519-cert-v01@openssh.com\ *) ;; *) die $EXIT_ERROR GRANT_INVALID 'no certificate in the answer' ;; esac
  [ -n "$device_id" ] && [ -n "$first" ] && [ -n "$ssh_port" ] && [ -n "$host_key" ] || die $EXIT_ERROR GRANT_INVALID 'incomplete answer'

  mv -f "$state/device_key.pending" "$state/device_key"
  mv -f "$state/device_key.pending.pub" "$state/device_key.pub"
  chmod 0600 "$state/device_key"
  chmod 0644 "$state/device_key.pub"
  printf '%s\n' "$cert" >"$state/device_key-cert.pub.tmp.$$" && chmod 0644 "$state/device_key-cert.pub.tmp.$$" &&
    mv -f "$state/device_key-cert.pub.tmp.$$" "$state/device_key-cert.pub"
  write_known_hosts "$state"
  write_state "$state" "$(iso_now)" ''
  shown=
  for e in $(with_ssh_endpoint); do shown="$shown${shown:+ }$(show_endpoint "$e")"; done
  echo "enrolled $device_id: ports $first-$last, ssh $shown, certificate valid until $valid_before"
}

# ---------------------------------------------------------------------------
# run

load_state() {
  s=$state/state.json
  [ -f "$s" ] || die $EXIT_NOT_ENROLLED NOT_ENROLLED "$state is not enrolled"
  device_id=$(json_str deviceId "$s") first=$(json_num first "$s") last=$(json_num last "$s")
  ssh_host=$(json_str host "$s") ssh_port=$(json_num port "$s") ssh_user=$(json_str username "$s")
  url=$(json_str url "$s") pin=$(json_str pin "$s") name=$(json_str name "$s")
  host_key=$(json_str hostKey "$s") host_ca=$(json_str hostCertificateAuthority "$s") enrolled_at=$(json_str enrolledAt "$s")
  [ -n "$device_id" ] && [ -n "$first" ] && [ -n "$ssh_port" ] && [ -n "$url" ] || die $EXIT_ERROR STATE_INVALID "$s is incomplete"
  # Absent from a state.json an older agent wrote: then the ssh endpoint alone.
  endpoints=$(json_endpoints "$s") || die $EXIT_ERROR STATE_INVALID "$s: malformed sshEndpoints"
  trust_json=$(parse_trust "$s") || die $EXIT_ERROR STATE_INVALID "$s: malformed trust set"
}

# Validity of the certificate file, from ssh-keygen -L (in UTC): sets serial,
# valid_after/valid_before (ISO), va/vb (epoch) and renew_at (two thirds of
# the life, plus up to 5% of it at random).
read_certificate() {
  listing=$(TZ=UTC ssh-keygen -L -f "$cert" 2>/dev/null) || return 1
  serial=$(printf '%s\n' "$listing" | sed -n 's/^ *Serial: \([0-9]*\).*/\1/p')
  valid_after=$(printf '%s\n' "$listing" | sed -n 's/^ *Valid: from \([0-9T:-]*\) to .*/\1/p')
  valid_before=$(printf '%s\n' "$listing" | sed -n 's/^ *Valid: from [0-9T:-]* to \([0-9T:-]*\).*/\1/p')
  [ -n "$valid_after" ] && [ -n "$valid_before" ] || return 1
  va=$(iso_to_epoch "$valid_after") vb=$(iso_to_epoch "$valid_before")
  life=$((vb - va))
  renew_at=$((va + life * 2 / 3))
  # The broker's renewAfter, when state.json still describes this very certificate.
  if [ -f "$state/state.json" ] && [ "$(json_str serial "$state/state.json")" = "$serial" ]; then
    suggested=$(json_str renewAfter "$state/state.json")
    [ -n "$suggested" ] && suggested=$(iso_to_epoch "$suggested")
    [ -n "$suggested" ] && [ "$suggested" -gt "$va" ] && [ "$suggested" -lt "$vb" ] && renew_at=$suggested
  fi
  renew_at=$((renew_at + $(random16) % (life / 20 + 1)))
  valid_after=${valid_after}.000Z valid_before=${valid_before}.000Z
}

write_status() { # state [error-code error-message]
  err_json=null
  [ -n "${2:-}" ] && last_error="{\"code\":\"$2\",\"message\":\"$3\",\"at\":\"$(iso_now)\"}"
  [ -n "${last_error:-}" ] && err_json=$last_error
  connected_json=null
  [ "$1" = connected ] && connected_json="\"$(iso_now)\""
  endpoint_json=null
  [ -n "${dial:-}" ] && endpoint_json="\"$(show_endpoint "$dial")\""
  printf '{"pid":%s,"transport":"openssh-sh","state":"%s","endpoint":%s,"since":"%s","connectedSince":%s,"serial":"%s","lastError":%s,"updatedAt":"%s"}\n' \
    "$$" "$1" "$endpoint_json" "$(iso_now)" "$connected_json" "$serial" "$err_json" "$(iso_now)" >"$state/status.json.tmp.$$"
  mv -f "$state/status.json.tmp.$$" "$state/status.json"
  if [ "$1" != "$current_state" ]; then
    log info state "$current_state -> $1" ",\"from\":\"$current_state\",\"to\":\"$1\""
    current_state=$1
  fi
}

# The SSH endpoints of a renewal's answer (nodes come and go): kept, with
# known_hosts, when it names them; an answer without a list (an older
# broker) or with an unusable one keeps the list the agent has.
adopt_endpoints() { # grant-file
  if ! new=$(json_endpoints "$1"); then
    log warn endpoints_ignored 'the renewal named unusable SSH endpoints; keeping the old list' ',"code":"GRANT_INVALID"'
    return 0
  fi
  [ -n "$new" ] || return 0
  new_host=$(json_str host "$1") new_port=$(json_num port "$1")
  case "$new_host" in ''|-*|*[!A-Za-z0-9._:-]*) return 0 ;; esac
  [ -n "$new_port" ] || return 0
  endpoints=$new ssh_host=$new_host ssh_port=$new_port
}

# The host key, host CA and trust set of a renewal's answer: the set replaces
# the stored one (none from an older broker: ssh's key and CA alone, as
# before); a malformed set is refused and the previous kept. One
# trust_changed line when what the agent accepts changed (counts only).
adopt_trust() { # grant-file
  from=$(trust_counts_json)
  before=$from${trust_json:-}
  new_key=$(json_str hostKey "$1") new_ca=$(json_str hostCertificateAuthority "$1")
  case "$new_key" in ssh-ed25519\ [A-Za-z0-9+/]*) host_key=$(printf '%s' "$new_key" | cut -d' ' -f1,2) ;; esac
  case "$new_ca" in ssh-ed25519\ [A-Za-z0-9+/]*) host_ca=$(printf '%s' "$new_ca" | cut -d' ' -f1,2) ;; esac
  if new=$(parse_trust "$1"); then
    trust_json=$new
    [ "$(trust_counts_json)${trust_json:-}" = "$before" ] ||
      log info trust_changed "the broker's trust set changed" ",\"from\":$from,\"to\":$(trust_counts_json),\"trustSet\":$([ -n "$trust_json" ] && echo true || echo false)"
  else
    log warn trust_refused 'the broker sent a malformed trust set; the previous one is kept' ',"code":"TRUST_INVALID"'
  fi
}

# Renews with certunnel-renew.sh. Returns 0 renewed, 1 transient failure;
# exits the agent when the broker refuses for good.
renew() {
  rm -f "$state/grant.json"
  caps=
  have_jq && [ -z "$no_capabilities" ] && caps=trust-set-v1
  out=$(sh "$renew_script" --url "$url" --pin "$(api_pins)" --device-id "$device_id" --key "$key" --out "$cert" --grant "$state/grant.json" --capabilities "$caps" 2>&1)
  rc=$?
  # An older broker refused the field (the script retried without): not again in this process.
  case "$out" in *'capabilities refused'*) no_capabilities=1 ;; esac
  if [ $rc = 0 ]; then
    read_certificate || { log warn renew_failed 'renewed certificate unreadable' ',"code":"GRANT_INVALID"'; return 1; }
    adopt_endpoints "$state/grant.json"
    adopt_trust "$state/grant.json"
    write_known_hosts "$state"
    rm -f "$state/grant.json"
    renew_after=$(epoch_to_iso "$renew_at")
    write_state "$state" "$enrolled_at" "$(iso_now)"
    renew_attempt=0
    log info renewed 'certificate renewed' ",\"serial\":\"$serial\",\"validBefore\":\"$valid_before\""
    return 0
  fi
  code=$(printf '%s\n' "$out" | sed -n 's/.*refused: \([A-Z_0-9]*\).*/\1/p' | head -n 1)
  [ $rc = 3 ] || code=UNREACHABLE
  case "$code" in
    DEVICE_REVOKED)
      stop_ssh
      write_status revoked DEVICE_REVOKED 'the broker revoked this device'
      log error revoked 'device revoked by the broker; stopping for good' ',"code":"DEVICE_REVOKED"'
      exit $EXIT_REVOKED ;;
    RENEWAL_GRACE_EXCEEDED|DEVICE_UNKNOWN)
      stop_ssh
      write_status closed "$code" 're-enroll the device'
      log error refused "the broker will not renew this device; re-enroll it" ",\"code\":\"$code\""
      exit $EXIT_REFUSED ;;
  esac
  delay=$(backoff_delay "$renew_attempt" 5 300)
  renew_attempt=$((renew_attempt + 1))
  renew_at=$(($(now) + delay))
  log warn renew_failed 'renewal failed; the tunnel is kept, retrying' ",\"code\":\"$code\",\"retryInSeconds\":$delay"
  write_status "$current_state" "$code" 'renewal failed'
  return 1
}

# Full jitter: uniform in [1, min(cap, base * 2^attempt)] seconds.
backoff_delay() { # attempt base cap
  bound=$2 i=0
  while [ $i -lt "$1" ] && [ $bound -lt "$3" ]; do bound=$((bound * 2)); i=$((i + 1)); done
  [ $bound -gt "$3" ] && bound=$3
  d=$(($(random16) * bound / 65536 + 1))
  [ $d -gt "$bound" ] && d=$bound
  echo $d
}

start_ssh() {
  : >"$ssh_log"
  rm -f "$state/ssh.exit"
  (
    set -- -N -v -F /dev/null -E "$ssh_log" -o BatchMode=yes -o ExitOnForwardFailure=yes \
      -o "ServerAliveInterval=$keepalive" -o ServerAliveCountMax=3 -o ConnectTimeout=20 \
      -o "UserKnownHostsFile=$state/known_hosts" -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes \
      -o UpdateHostKeys=no -o CheckHostIP=no -o IdentitiesOnly=yes -o IdentityAgent=none -o "CertificateFile=$cert" \
      -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o ControlMaster=no -o ControlPath=none -i "$key"
    for f in $forwards; do set -- "$@" -R "$f"; done
    set -- "$@" -p "${dial##*:}" -l "$ssh_user" -- "${dial%:*}"
    ssh "$@" </dev/null 2>>"$ssh_log" &
    echo $! >"$state/ssh.pid"
    wait $!
    echo $? >"$state/ssh.exit"
  ) &
}

ssh_running() { [ ! -f "$state/ssh.exit" ]; }

stop_ssh() {
  pid=$(cat "$state/ssh.pid" 2>/dev/null) || return 0
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  n=0
  while ssh_running && [ $n -lt 50 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n + 1)); done
  rm -f "$state/ssh.pid"
}

# A child left by an earlier run that was killed (it would hold the ports on an sshd).
stop_stale_ssh() {
  pid=$(cat "$state/ssh.pid" 2>/dev/null) || return 0
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$cert"; then
    kill "$pid" 2>/dev/null
  fi
  rm -f "$state/ssh.pid"
}

classify_ssh_end() {
  plain=$(grep -v '^debug' "$ssh_log")
  case "$plain" in
    *'Host key verification failed'*|*'REMOTE HOST IDENTIFICATION HAS CHANGED'*) echo HOST_KEY_MISMATCH ;;
    *'Permission denied'*) echo AUTH_REFUSED ;;
    *'remote port forwarding failed'*) echo FORWARD_REFUSED ;;
    *'not responding'*) echo KEEPALIVE_TIMEOUT ;;
    *'Connection refused'*|*'No route to host'*|*'Network is unreachable'*|*'Could not resolve'*|*'timed out'*) echo UNREACHABLE ;;
    *) echo DISCONNECTED ;;
  esac
}

# Sleeps SECONDS, but a TERM/INT ends the sleep at once (the trap runs when wait returns).
pause() {
  sleep "$1" &
  sleeper=$!
  wait $sleeper 2>/dev/null
  kill $sleeper 2>/dev/null
}

on_signal() {
  stopping=1
}

cmd_run() {
  state= services= keepalive=15 backoff_cap=60 poll=2
  while [ $# -gt 0 ]; do
    case "$1" in
      --state-dir) state=$2; shift 2 ;;
      --service) services="$services $2"; shift 2 ;;
      --keepalive) keepalive=$2; shift 2 ;;
      --backoff-cap) backoff_cap=$2; shift 2 ;;
      --poll) poll=$2; shift 2 ;;
      *) die $EXIT_USAGE BAD_ARGUMENT "unknown argument: $1" ;;
    esac
  done
  [ -n "$state" ] || die $EXIT_USAGE BAD_ARGUMENT 'usage: certunnel-agent.sh run --state-dir DIR [--service SLOT:HOST:PORT]... [--keepalive S] [--backoff-cap S] [--poll S]'
  [ -n "$services" ] || services='0:127.0.0.1:22 1:127.0.0.1:80'
  load_state
  key=$state/device_key cert=$state/device_key-cert.pub ssh_log=$state/ssh.log
  size=$((last - first + 1))
  forwards= nforwards=0
  for s in $services; do
    slot=${s%%:*} target=${s#*:}
    case "$slot" in ''|*[!0-9]*) die $EXIT_USAGE BAD_ARGUMENT "--service $s: SLOT:HOST:PORT" ;; esac
    case "$target" in *:*) ;; *) die $EXIT_USAGE BAD_ARGUMENT "--service $s: SLOT:HOST:PORT" ;; esac
    if [ "$slot" -ge "$size" ]; then log warn service_skipped "slot $slot is outside the port block"; continue; fi
    forwards="$forwards 127.0.0.1:$((first + slot)):$target"
    nforwards=$((nforwards + 1))
  done
  [ $nforwards -gt 0 ] || die $EXIT_USAGE SERVICE_INVALID 'no service fits in the port block'

  current_state=initial last_error= stopping= attempt=0 renew_attempt=0 refused_renewed= round= dial= failed_over= no_capabilities= round_mismatch=
  trap on_signal TERM INT
  printf '%s %s\n' "$$" "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" >"$state/run.pid"
  read_certificate || die $EXIT_ERROR STATE_INVALID "$cert is unreadable"
  stop_stale_ssh
  log info start "agent starting" ",\"deviceId\":\"$device_id\",\"pid\":$$"

  while [ -z "$stopping" ]; do
    if [ "$(now)" -ge "$renew_at" ]; then
      write_status renewing
      if ! renew && [ "$(now)" -ge "$vb" ]; then
        write_status backoff
        pause "$(backoff_delay "$attempt" 1 "$backoff_cap")"
        attempt=$((attempt + 1))
        continue
      fi
    fi
    # A round dials every endpoint once, in a random order (spreads a fleet over the nodes); after a drop, the others.
    [ -n "$round" ] || round=$(shuffle $(with_ssh_endpoint) | tr '\n' ' ')
    dial=${round%% *} round=${round#* }
    write_status connecting
    start_ssh
    connected_at= reconnect=
    while [ -z "$stopping" ] && ssh_running; do
      if [ -z "$connected_at" ] && [ "$(grep -c 'remote forward success' "$ssh_log")" -ge $nforwards ]; then
        connected_at=$(now)
        refused_renewed= round_mismatch=
        write_status connected
        log info connected 'tunnel up' ",\"serial\":\"$serial\",\"endpoint\":\"$(show_endpoint "$dial")\",\"port\":${dial##*:}"
      fi
      if [ "$(now)" -ge "$renew_at" ] && renew; then
        log info reconnect 'reconnect with the renewed certificate'
        stop_ssh
        attempt=0 reconnect=1
        break
      fi
      pause "$poll"
    done
    [ -n "$stopping" ] && break
    if [ -n "$reconnect" ]; then round=; continue; fi # with the fresh certificate (and the renewal's endpoints), at once
    code=$(classify_ssh_end)
    shown=$(show_endpoint "$dial")
    if [ -n "$connected_at" ]; then
      log warn tunnel_lost 'tunnel lost' ",\"code\":\"$code\",\"endpoint\":\"$shown\""
      if [ $(($(now) - connected_at)) -ge 10 ]; then attempt=0 failed_over=; fi
      # The node may be gone: the other endpoints at once, but once only before a backoff
      # (a node that drops every session at once must not make the agent dial in a loop).
      round=
      if [ -z "$failed_over" ]; then
        for e in $(with_ssh_endpoint); do [ "$e" = "$dial" ] || round="$round $e"; done
        if [ -n "$round" ]; then
          round=$(shuffle $round | tr '\n' ' ') failed_over=1
          write_status connecting "$code" 'ssh exited'
          continue
        fi
      fi
    else
      log warn connect_failed 'tunnel could not be opened' ",\"code\":\"$code\",\"endpoint\":\"$shown\""
      [ "$code" = HOST_KEY_MISMATCH ] && round_mismatch=1
      # The next endpoint of the round at once; a refused certificate is the same on every node.
      if [ "$code" != AUTH_REFUSED ] && [ -n "$round" ]; then
        write_status connecting "$code" 'ssh exited'
        continue
      fi
    fi
    round= failed_over=
    [ "$code" != AUTH_REFUSED ] && [ -n "$round_mismatch" ] && code=HOST_KEY_MISMATCH
    round_mismatch=
    write_status backoff "$code" 'ssh exited'
    if { [ "$code" = AUTH_REFUSED ] || [ "$code" = HOST_KEY_MISMATCH ]; } && [ -z "$refused_renewed" ]; then
      # Expired, revoked, or the CA changed: the broker's API knows which.
      # A host key outside the trust set: a spoof, or a host-key rotation the
      # device slept through; renewal (over the pinned API) brings the
      # current set. The unknown key itself is never accepted.
      refused_renewed=1
      renew_at=0
      continue
    fi
    refused_renewed=
    delay=$(backoff_delay "$attempt" 1 "$backoff_cap")
    attempt=$((attempt + 1))
    log info backoff 'waiting before retrying' ",\"attempt\":$attempt,\"delaySeconds\":$delay"
    pause "$delay"
  done
  stop_ssh
  write_status closed
  log info exit 'agent stopped' ',"status":0'
  rm -f "$state/run.pid"
  exit 0
}

case "${1:-}" in
  enroll) shift; cmd_enroll "$@" ;;
  run) shift; cmd_run "$@" ;;
  *) die $EXIT_USAGE BAD_ARGUMENT 'usage: certunnel-agent.sh enroll|run …' ;;
esac
