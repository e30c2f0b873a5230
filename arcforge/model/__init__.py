"""Reserved for later issues; see README 'Roadmap'."""
