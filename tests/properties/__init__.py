"""Property-based tests (hypothesis) of the engine's laws: fakes for speed, real providers
for the trust-edge laws of CA rotations."""
