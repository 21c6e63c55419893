"""Value formats of plain (routed) topics: how a record that is not a KaPoW packet becomes a row.

``debezium`` decodes Debezium change events (:mod:`kapow.formats.debezium`); the per-type conversions live in
:mod:`kapow.formats.debezium_types` (which columns need converting) and :mod:`kapow.formats.values` (how).
"""
