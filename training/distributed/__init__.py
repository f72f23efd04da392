"""The distributed back-ends the engine runs on: FSDP2 sharding and DeepSpeed ZeRO (plain data parallelism is the
engine's own gradient averaging)."""
