"""Tests of the serving API against real Redis filled by the real worker sink."""
