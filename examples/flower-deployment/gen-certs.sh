#!/usr/bin/env bash
# TLS certificates for a SuperLink on loopback and one ECDSA key pair per SuperNode (for SuperNode
# authentication). Usage: gen-certs.sh OUT_DIR NUM_SUPERNODES. Nothing leaves this machine.
set -euo pipefail
out=${1:?usage: gen-certs.sh OUT_DIR NUM_SUPERNODES}
n=${2:?usage: gen-certs.sh OUT_DIR NUM_SUPERNODES}
mkdir -p "$out"
cd "$out"
# a private CA, and a server certificate for 127.0.0.1 / localhost signed by it
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=hfedmoe-test-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
printf "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
  -extfile server.ext -out server.pem 2>/dev/null
# SuperNode identities: EC (NIST P-384) key pairs in OpenSSH format, as flwr expects
for i in $(seq 0 $((n - 1))); do
  rm -f "supernode_$i" "supernode_$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "hfedmoe-supernode-$i" -f "supernode_$i"
done
chmod 600 ca.key server.key supernode_*
echo "certificates and $n SuperNode key pairs in $out"
