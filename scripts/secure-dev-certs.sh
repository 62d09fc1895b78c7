#!/bin/sh
# A private CA and certificates for docker-compose.secure.yml (development and staging only; use
# your own PKI in production). Writes ./secrets/: ca.pem, kafka.pem (key + certificate, SAN kafka and
# localhost), admin.pem (the client that creates SCRAM users and ACLs), redis.pem/redis.key, and the
# Redis ACL file and Kafka JAAS file filled with the passwords from the environment:
#   OMNIPROFILE_KAFKA_SASL_PASSWORD (the workers' SCRAM password), OMNIPROFILE_REDIS_PASSWORD,
#   KAFKA_ADMIN_PASSWORD (the broker's own SCRAM login).
set -eu
: "${OMNIPROFILE_KAFKA_SASL_PASSWORD:?set OMNIPROFILE_KAFKA_SASL_PASSWORD}"
: "${OMNIPROFILE_REDIS_PASSWORD:?set OMNIPROFILE_REDIS_PASSWORD}"
: "${KAFKA_ADMIN_PASSWORD:?set KAFKA_ADMIN_PASSWORD}"
out=secrets
mkdir -p "$out"
cd "$out"
umask 077

openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=omniprofile dev CA" \
  -keyout ca.key -out ca.pem

cert() {  # cert NAME CN SAN
  openssl req -newkey rsa:3072 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr"
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$1.ext" -out "$1.crt"
  cat "$1.key" "$1.crt" > "$1.pem"
  rm -f "$1.csr" "$1.ext"
}
cert kafka kafka "DNS:kafka,DNS:localhost"
cert admin admin "DNS:admin"
cert redis redis "DNS:redis,DNS:localhost"

# Redis: no default user; the workers' user reaches only omniprofile's keys and none of the
# @dangerous commands (FLUSHALL, FLUSHDB, KEYS, CONFIG, ... come with @write and @keyspace) but INFO.
cat > users.acl <<ACL
user default off
user omniprofile on >${OMNIPROFILE_REDIS_PASSWORD} ~${OMNIPROFILE_REDIS_KEY_PREFIX:-omniprofile:}* resetchannels -@all +@read +@write +@keyspace +@hash +@set +@string +@scripting +@connection -@dangerous +info +memory
ACL

# Kafka: the broker's own SCRAM login on the SASL listeners.
cat > kafka_server_jaas.conf <<JAAS
KafkaServer {
  org.apache.kafka.common.security.scram.ScramLoginModule required
  username="admin" password="${KAFKA_ADMIN_PASSWORD}";
};
JAAS

# The containers run as non-root users: let them read what they need (the directory stays private).
chmod 644 ca.pem kafka.pem admin.pem redis.crt redis.key users.acl kafka_server_jaas.conf
rm -f ca.key ca.srl
echo "secrets/ ready: CA ca.pem; mount it where clients verify the broker and Redis"
