from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.faust_tuning import app_with_fetch_wait


class BuiltConsumer:
    _fetch_max_wait_ms = 1500  # what Faust hard-codes


def test_the_worker_consumer_long_polls_at_most_the_configured_wait(monkeypatch):
    monkeypatch.setattr(
        faust_aiokafka.AIOKafkaConsumerThread,
        "_create_worker_consumer",
        lambda self, transport: BuiltConsumer(),
    )
    app_class = app_with_fetch_wait(123)
    thread_class = app_class.consumer_thread_class
    thread = thread_class.__new__(thread_class)
    assert thread._create_worker_consumer(None)._fetch_max_wait_ms == 123
    assert (
        app_class.transport_class.Consumer._new_consumer_thread
        is not faust_aiokafka.Consumer._new_consumer_thread
    )


def test_each_app_class_keeps_its_own_wait():
    assert app_with_fetch_wait(50).consumer_thread_class.fetch_max_wait_ms == 50
    assert app_with_fetch_wait(900).consumer_thread_class.fetch_max_wait_ms == 900


def test_partitions_without_a_commit_are_rewound_to_the_beginning():
    import asyncio

    from streams.faust_tuning import seek_to_committed_or_beginning

    class Consumer:
        rewound: tuple[str, ...] = ()

        async def seek_to_committed(self):
            return {"never-committed": None, "committed-zero": 0, "committed": 42}

        async def seek_to_beginning(self, *partitions):
            self.rewound = partitions

    consumer = Consumer()
    offsets = asyncio.run(seek_to_committed_or_beginning(consumer))
    assert offsets["committed"] == 42
    assert set(consumer.rewound) == {"never-committed", "committed-zero"}
