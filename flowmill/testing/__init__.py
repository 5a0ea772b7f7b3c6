"""`flowmill test`: declarative tests of a Pipeline manifest, run on an embedded Kafka and
Redis with the same workers `flowmill run` and a cluster run (docs/testing-pipelines.md).

spec: the test file's models; plan: checks against the manifest and each test's copy of
the Pipeline; observe: reading tables and topics back; compare: the report's diff lines;
crash: --crash random; runner: the whole invocation; command: its arguments.
"""
