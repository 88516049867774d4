"""An in-process parameter-server cluster for tests (run in a child process).

TensorFlow connects a process to one cluster only, so each test that needs one
runs in a fresh Python process (`helpers.run_python`) that imports this.
"""

import socket

import tensorflow as tf


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def strategy(num_workers=1, num_ps=2, parts=3, min_rows=10, partitioner=None):
    """`(ParameterServerStrategy, ClusterCoordinator)` on a new local cluster.

    Variables of at least `min_rows` rows are split into `parts` row blocks;
    smaller ones (kernels, biases) stay whole, as with a `MinSizePartitioner`.
    A `partitioner` given replaces that rule.
    """
    ports = free_ports(num_workers + num_ps)
    spec = tf.train.ClusterSpec(
        {
            "worker": [f"127.0.0.1:{p}" for p in ports[:num_workers]],
            "ps": [f"127.0.0.1:{p}" for p in ports[num_workers:]],
        }
    )
    # Without it, worker servers hang on a 2-core machine (FACTS.md).
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=num_workers + 1)
    servers = [
        tf.distribute.Server(spec, "worker", i, config=config, protocol="grpc")
        for i in range(num_workers)
    ] + [tf.distribute.Server(spec, "ps", i, protocol="grpc") for i in range(num_ps)]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, rpc_layer="grpc"
    )

    def by_rows(shape, dtype):
        del dtype
        return [parts if shape[0] >= min_rows else 1] + [1] * (shape.rank - 1)

    ps_strategy = tf.distribute.ParameterServerStrategy(
        resolver, variable_partitioner=partitioner or by_rows
    )
    ps_strategy._test_servers = servers  # kept alive with the strategy
    # Another strategy on the same cluster (another partitioner) needs it.
    ps_strategy._test_resolver = resolver
    coordinator = tf.distribute.coordinator.ClusterCoordinator(ps_strategy)
    return ps_strategy, coordinator
