"""Operations: event export (NATS JetStream, MQTT), Prometheus metrics, JSON logs,
liveness and readiness probes."""
