"""The daemon at run time: the node, its gossip engine, trainer, membership driver, defence, checkpoints and config."""
