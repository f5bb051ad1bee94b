"""The brokers' tenant queues: holding a message, releasing and draining held messages
(Redis and RabbitMQ), and the control task's fast publish on Redis."""
