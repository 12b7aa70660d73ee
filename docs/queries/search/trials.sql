-- Every trial of every search (run group), with its state, objective value, duration and run.
SELECT r.group_name, t.trial_number, t.state, t.value, t.duration_s, r.run_id
FROM runs r
JOIN trials t ON t.run_id = r.run_id
ORDER BY r.group_name, t.trial_number
