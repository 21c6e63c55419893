"""Change data capture for tests: a source database with a column of every common type, Debezium's PostgreSQL
source connector run by ``scripts/connect.sh``, and the change events read back from Kafka."""
