-- Pruned trials: the step they were stopped at, the value there, and the pruner that decided.
SELECT r.group_name, t.trial_number, a.epoch AS pruned_at_step, a.monitor_value AS value_at_pruning, a.cause
FROM runs r
JOIN trials t ON t.run_id = r.run_id
JOIN adaptations a ON a.run_id = r.run_id AND a.kind = 'pruning'
ORDER BY r.group_name, t.trial_number
