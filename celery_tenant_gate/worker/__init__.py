"""The worker side: ``install()``, the consumer bootstep that screens every task, the
sweeper thread and the control task."""
