#!/bin/sh
# Entry point of the locally built Apache Kafka image (infra/_kafka_image.py). It reads the same environment
# as the official apache/kafka image, so either image runs with the same settings:
#   KAFKA_<NAME> becomes the broker property <name> (lower case; _ is ., __ is _, ___ is -),
#   CLUSTER_ID formats the storage on first start, KAFKA_HEAP_OPTS and KAFKA_OPTS go to the JVM.
set -eu
conf=/opt/kafka/config/server.properties
: > "$conf"
env | sort | while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_LOG4J_OPTS) continue ;;
    KAFKA_*) ;;
    *) continue ;;
  esac
  key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
  printf '%s=%s\n' "$key" "$value" >> "$conf"
done
grep -q '^log\.dirs=' "$conf" || echo "log.dirs=/var/lib/kafka/data" >> "$conf"
: "${CLUSTER_ID:?CLUSTER_ID must be set (22 characters of URL-safe base64)}"
heap=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
logging="-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml -Dkafka.logs.dir=/opt/kafka/logs"
cp="/opt/kafka/libs/*"
# shellcheck disable=SC2086 # word splitting of the JVM options is intended
java -Xmx256m $logging -cp "$cp" kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$conf" --ignore-formatted >/dev/null
# shellcheck disable=SC2086
exec java $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
  $logging ${KAFKA_OPTS:-} -cp "$cp" kafka.Kafka "$conf"
