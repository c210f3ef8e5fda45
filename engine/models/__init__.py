"""Decoder implementations and the loader that builds them from a checkpoint directory."""
