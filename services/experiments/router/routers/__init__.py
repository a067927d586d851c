"""One router per resource: experiments (admin), rank, feedback, reports, dashboard."""
