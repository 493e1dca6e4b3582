"""Reference installations of CircleCI Server, built from CircleCI's own material (server-terraform,
the install docs, the monitoring reference), with the flows each needs and where that is written."""
