"""Result analysis: evaluation of a loader or a run folder, statistics, reports."""
