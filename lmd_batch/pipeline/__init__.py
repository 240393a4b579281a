"""Ray orchestration: stages as plug-ins, shard scheduling, resume from markers."""
