#!/bin/bash
# make-certs.sh OUTDIR [DAYS]: a private CA plus the collector's and the agents' certificates for mutual
# TLS, written as PEM files and as OUTDIR/unlinkwatch-tls.yaml, two Secrets the deploy/ manifests mount:
#   unlinkwatch-collector-tls  (tls.crt, tls.key, ca.crt)  server cert, also usable as a client (its probe)
#   unlinkwatch-agent-tls      (tls.crt, tls.key, ca.crt)  client cert shared by every node's agent
# Keys never go into the repository: apply the manifest, then keep OUTDIR somewhere safe (or delete it).
set -euo pipefail
out=${1:?usage: make-certs.sh OUTDIR [DAYS]}
days=${2:-825}
ns=unlinkwatch
svc=unlinkwatch-collector
mkdir -p "$out"
umask 077
cd "$out"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -e ca.key ]; then
  key ca.key
  openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=unlinkwatch CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt
fi

# issue NAME CN EKU SAN: a leaf certificate signed by the CA.
issue() {
  local name=$1 cn=$2 eku=$3 san=$4
  key "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' \
    "$eku" "$san" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

issue collector "$svc.$ns.svc" serverAuth,clientAuth \
  "subjectAltName=DNS:$svc,DNS:$svc.$ns,DNS:$svc.$ns.svc,DNS:$svc.$ns.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
issue agent unlinkwatch-agent clientAuth "subjectAltName=DNS:unlinkwatch-agent"

b64() { base64 -w0 <"$1"; }
secret() {
  cat <<EOF
---
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $ns
  labels:
    app.kubernetes.io/part-of: unlinkwatch
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$2.crt")
  tls.key: $(b64 "$2.key")
  ca.crt: $(b64 ca.crt)
EOF
}
{ secret unlinkwatch-collector-tls collector; secret unlinkwatch-agent-tls agent; } >unlinkwatch-tls.yaml

dir=$(pwd)
cat <<EOF
make-certs: CA, collector and agent certificates in $dir (valid $days days)
apply with:
  kubectl apply -f deploy/00-namespace.yaml -f $dir/unlinkwatch-tls.yaml
or, the same with kubectl create:
  kubectl -n $ns create secret generic unlinkwatch-collector-tls --type=kubernetes.io/tls \\
    --from-file=tls.crt=$dir/collector.crt --from-file=tls.key=$dir/collector.key --from-file=ca.crt=$dir/ca.crt
  kubectl -n $ns create secret generic unlinkwatch-agent-tls --type=kubernetes.io/tls \\
    --from-file=tls.crt=$dir/agent.crt --from-file=tls.key=$dir/agent.key --from-file=ca.crt=$dir/ca.crt
EOF
