"""Operating a running peer: the gRPC admin service, the Prometheus metrics, the admin token check.

Both read the node through ``peer.ops.view.NodeView``, never ``Node`` itself."""
