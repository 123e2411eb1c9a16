"""The head: what runs where the user types (cluster, transport, liveness, config, feedback, each step's head half).
"""
