"""What both sides must agree on: the protocol, framing, records, the home's layout, partitions, sort
order, dataset names, and the user's code as both load it. Standard library only.
"""
