"""The peer: Kafka Connect (standalone) + the Debezium JDBC sink, landing the same data into the same tables.

KaPoW is only interesting compared with what people would use instead, and the usual off-the-shelf answer for
"Kafka topic → PostgreSQL table" is Kafka Connect with a JDBC sink; the Debezium JDBC sink is the maintained one.
This package runs it on exactly the records and tables KaPoW gets and measures it the same way (``bench/peer/
README.md`` has the versions, the tuning and why it is fair). Only confluent-kafka, psycopg 3 and the standard
library are used on the Python side; the Java side is resolved by Maven from ``pom.xml`` beside this file.

* :mod:`.records`: the historical row generator and Connect's JSON-with-schema encoding of flat rows;
* :mod:`.jars`: the classpath, resolved once and cached;
* :mod:`.connect`: one run (topic, publish, JVM, wait, stop);
* ``python -m kapow_bench.peer``: the peer alone, from the command line.
"""

from __future__ import annotations

KAFKA_CONNECT_VERSION = "4.3.1"
DEBEZIUM_JDBC_VERSION = "3.5.0.Final"
POSTGRESQL_JDBC_VERSION = "42.7.14"
CONNECTOR_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
