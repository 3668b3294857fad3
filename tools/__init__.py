"""Development tools, not part of the product: the Events API emulator, synthetic data, the one-process
runner, and what `make run` uses to start a local stack."""
