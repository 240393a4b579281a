"""Prompt input: reading prompt files, planning shards, checking rows."""
