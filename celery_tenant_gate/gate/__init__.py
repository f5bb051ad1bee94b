"""The policy: knowing a tenant's state, deciding run/hold/drop per task, holding,
releasing, the sweep, deletion and moves."""
