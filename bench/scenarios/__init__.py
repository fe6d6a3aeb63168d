"""Benchmark scenarios; each module measures ours and its references, interleaved."""

__all__: list[str] = []
