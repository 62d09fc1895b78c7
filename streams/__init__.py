"""The streaming shell of omniprofile: Faust app, topics, agents, tables, sinks, command line."""
