-- The five best complete trials of each maximizing search, with the run's hyperparameters
-- (for a minimizing search, ORDER BY t.value ASC).
SELECT r.group_name, t.trial_number, t.value, h.*
FROM runs r
JOIN trials t ON t.run_id = r.run_id
JOIN hyperparameters h ON h.run_id = r.run_id
WHERE t.state = 'COMPLETE'
  AND (SELECT count(*) FROM trials b JOIN runs rb ON rb.run_id = b.run_id
       WHERE rb.group_name = r.group_name AND b.state = 'COMPLETE' AND b.value > t.value) < 5
ORDER BY r.group_name, t.value DESC
