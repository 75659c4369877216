#!/usr/bin/env bash
# Makes a development CA, a server certificate for localhost/127.0.0.1 and a client
# certificate, all in certs/dev/ (git-ignored). TEST ONLY: the keys are unencrypted.
#
#   certs/make-dev-certs.sh            # writes certs/dev/{ca,server,client}.{pem,key}
#   certs/make-dev-certs.sh OUTDIR     # elsewhere
set -euo pipefail
out="${1:-$(dirname "$0")/dev}"
mkdir -p "$out"
cd "$out"
days=825

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
  -keyout ca.key -out ca.pem -subj "/CN=roostd development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
  -extfile server.ext -out server.pem 2>/dev/null

openssl req -newkey rsa:2048 -nodes -sha256 -keyout client.key -out client.csr -subj "/CN=client1" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:client1.local\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
  -extfile client.ext -out client.pem 2>/dev/null

rm -f server.csr client.csr server.ext client.ext ca.srl
chmod 600 ./*.key
echo "Wrote $(pwd)/{ca,server,client}.pem and .key (development only)."
