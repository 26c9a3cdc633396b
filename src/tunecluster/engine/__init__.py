"""What the chief and the Ray scheduler both run: oracle hosting (KerasTuner's oracles
with Keras stood in for), the test-split evaluation process, and finalize."""
