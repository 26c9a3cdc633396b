"""Exports of a job's results to other tools' formats (TensorBoard HParams)."""
