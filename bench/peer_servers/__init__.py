"""The peer servers of bench.peers, each as small as a user would write it (some run in their own virtualenv)."""
