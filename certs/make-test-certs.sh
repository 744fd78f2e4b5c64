#!/usr/bin/env bash
# Creates the TEST-ONLY certificates in certs/test/ (see certs/README.md): a test CA, leaf
# certificates it signs for rookery.test, prosody.test, ejabberd.test and other.test (each also
# for its subdomains), and self-signed certificates for prosody.test and ejabberd.test that the
# CA did not sign.
#
# Idempotent: files that exist are kept; delete certs/test/ (or one pair of files) and run it
# again to make new ones. Deleting ca.key or ca.pem makes every CA-signed leaf anew.
# Never use any of these for a real deployment: the private keys are in the repository.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p test
cd test

DAYS=7300 # 20 years: test-only, so no rotation to worry about
curve=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

if [ ! -s ca.pem ] || [ ! -s ca.key ]; then
  rm -f ca.pem ca.key ./*.test.pem ./*.test.key
  openssl req -x509 "${curve[@]}" -days "$DAYS" -sha256 \
    -subj "/O=rookery/CN=rookery test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout ca.key -out ca.pem 2>/dev/null
fi

ext() { # the extensions of a leaf certificate for domain $1 and its subdomains
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=DNS:$1,DNS:*.$1" \
    "subjectKeyIdentifier=hash"
}

leaf() { # a leaf certificate for $1 signed by the test CA
  local name=$1
  [ -s "$name.pem" ] && [ -s "$name.key" ] && return
  openssl req "${curve[@]}" -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
    -days "$DAYS" -sha256 -extfile <(ext "$name"; echo "authorityKeyIdentifier=keyid") \
    -out "$name.pem" 2>/dev/null
  rm -f "$name.csr"
}

leaf rookery.test
leaf prosody.test
leaf other.test
leaf ejabberd.test

self_signed() { # $1.pem/.key: a certificate for domain $2 and its subdomains, not from the CA
  local name=$1 domain=$2
  [ -s "$name.pem" ] && [ -s "$name.key" ] && return
  openssl req -x509 "${curve[@]}" -days "$DAYS" -sha256 -subj "/CN=$domain" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth,clientAuth" \
    -addext "subjectAltName=DNS:$domain,DNS:*.$domain" \
    -keyout "$name.key" -out "$name.pem" 2>/dev/null
}

# Not from the CA: a peer that presents one can only be authenticated with dialback.
self_signed self-signed.test prosody.test
self_signed self-signed-ejabberd.test ejabberd.test

# Test-only keys, readable by every user: Prosody and ejabberd run as their own users and
# read copies.
chmod 0644 ./*.pem ./*.key

for name in rookery.test prosody.test other.test ejabberd.test; do
  openssl verify -CAfile ca.pem "$name.pem" >/dev/null
done
echo "test certificates in $PWD"
