#!/usr/bin/env bash
# Makes a private CA and the three certificates the services' mutual TLS needs, and writes them as
# Kubernetes Secret manifests (kubernetes.io/tls, with ca.crt):
#   vlm-vision-server-tls    vision's server certificate; its ca.crt is the CA vision requires client
#                            certificates from (VLM_TLS_CA)
#   vlm-vision-client-tls    the language service's client certificate for the hop to vision, and the
#                            CA it verifies vision with (VLM_VISION_CLIENT_CERT/KEY, VLM_VISION_CA)
#   vlm-language-server-tls  the language service's server certificate for backend apps
# and two bearer tokens, in the file format of shared/auth-tokens.ts:
#   vlm-auth                 the clients' token, which the language service accepts (VLM_AUTH_TOKEN_FILE);
#                            also DIR/auth-tokens, for `VLM_AUTH_TOKEN_FILE=DIR/auth-tokens vlm ask`
#   vlm-hop-auth             the hop's token (DIR/hop-tokens): the language service sends it
#                            (VLM_VISION_TOKEN_FILE), and it is the only one vision accepts (in a
#                            folder made before the split, first a copy of auth-tokens' first token)
# For development and test clusters. In production let cert-manager or your PKI issue them (docs/deploy.md).
#
#   k8s/tls/make-dev-certs.sh [--out DIR] [--namespace vlm] [--domain cluster.local] [--days 90] [--ca-days 3650]
#   kubectl apply -f DIR/secrets.yaml
#
# Re-running it with the same DIR renews the three certificates (valid --days) under the CA already
# there (valid --ca-days from its making) and keeps the tokens: the pods re-read their Secrets at
# different moments, and a new CA would fail the hop's handshake between a pod that has re-read and
# one that has not. It refuses to renew when the CA would expire within --days; delete DIR/ca.* to
# start a new CA (every pod then needs the new Secrets before the hop works again).
set -euo pipefail
OUT=./vlm-dev-certs; NS=vlm; DOMAIN=cluster.local; DAYS=90; CA_DAYS=3650
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift ;;
    --namespace) NS=$2; shift ;;
    --domain) DOMAIN=$2; shift ;;
    --days) DAYS=$2; shift ;;
    --ca-days) CA_DAYS=$2; shift ;;
    *) echo "unknown option $1 (use --out DIR, --namespace NS, --domain D, --days N, --ca-days N)" >&2; exit 2 ;;
  esac
  shift
done
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
mkdir -p "$OUT" && cd "$OUT"
umask 077

# Every name a client may dial: the headless Service (the language service's dns:/// target), the
# ClusterIP Service, short and fully qualified in the cluster's DNS domain.
names() { local svc; for svc in "$@"; do printf 'DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.%s,' "$svc" "$svc" "$NS" "$svc" "$NS" "$svc" "$NS" "$DOMAIN"; done | sed 's/,$//'; }

[ "$DAYS" -le "$CA_DAYS" ] || { echo "--days $DAYS outlives --ca-days $CA_DAYS: certificates must expire before their CA" >&2; exit 2; }
if [ -s ca.key ] && [ -s ca.crt ]; then
  openssl x509 -in ca.crt -noout >/dev/null 2>&1 || { echo "$(pwd)/ca.crt is not a readable certificate" >&2; exit 1; }
  openssl x509 -in ca.crt -noout -checkend $((DAYS * 86400)) >/dev/null || {
    echo "the CA in $(pwd) expires within $DAYS days (a folder from before the CA was kept lived 90 days like its certificates): delete ca.key and ca.crt to make a new one, valid --ca-days" >&2; exit 1; }
else
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$CA_DAYS" \
    -subj "/CN=vlm-dev-ca" -keyout ca.key -out ca.crt \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
fi

# issue NAME CN EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
issue() {
  local name=$1 cn=$2 eku=$3 san=${4:-}
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    -keyout "$name.key" -out "$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
issue vision-server vlm-vision serverAuth "$(names vlm-vision-headless vlm-vision)"
issue language-server vlm-language serverAuth "$(names vlm-language-headless vlm-language)"
issue vision-client vlm-language clientAuth

# openssl's base64, not base64(1): macOS's has no -w0, and a failure inside printf's arguments would
# not stop the script (set -e), writing empty Secrets.
secret() {
  local name=$1 cert=$2
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\ntype: kubernetes.io/tls\ndata:\n' "$name" "$NS"
  printf '  tls.crt: %s\n  tls.key: %s\n  ca.crt: %s\n' \
    "$(openssl base64 -A < "$cert.crt")" "$(openssl base64 -A < "$cert.key")" "$(openssl base64 -A < ca.crt)"
}
# 32 random bytes, base64url: a bearer token needs no quoting in a header. Kept when it exists, so
# re-running this to renew the certificates does not lock out the callers holding the token.
token() { printf '%s %s\n' "$1" "$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n')"; }
# The clients' token (vlm-auth: language only) and the hop's (vlm-hop-auth: sent by language, the only
# one vision accepts), so the vision pods never hold a client's token.
# A folder from before the split keeps its hop working through the rollout: old language pods send
# auth-tokens' first line, so the hop starts with that one, a client's token until it is rotated.
if [ ! -s hop-tokens ] && [ -s auth-tokens ]; then
  if grep -m1 -v '^[[:space:]]*\(#\|$\)' auth-tokens > hop-tokens; then
    echo "hop-tokens starts as auth-tokens' first token, which the old pods send: once rolled out, rotate vlm-hop-auth to a token of its own (docs/deploy.md)" >&2
  fi
fi
[ -s auth-tokens ] || token dev > auth-tokens
[ -s hop-tokens ] || token language > hop-tokens
auth_secret() {
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\ntype: Opaque\ndata:\n  tokens: %s\n' \
    "$1" "$NS" "$(openssl base64 -A < "$2")"
}
{ secret vlm-vision-server-tls vision-server; secret vlm-vision-client-tls vision-client; secret vlm-language-server-tls language-server; auth_secret vlm-auth auth-tokens; auth_secret vlm-hop-auth hop-tokens; } > secrets.yaml
echo "wrote $(pwd)/secrets.yaml (certificates valid $DAYS days; CA: $(pwd)/ca.crt, until $(openssl x509 -in ca.crt -noout -enddate | cut -d= -f2); clients' bearer token: $(pwd)/auth-tokens; the hop's: $(pwd)/hop-tokens); apply with: kubectl apply -f $(pwd)/secrets.yaml"
