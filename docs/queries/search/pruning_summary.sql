-- Per search: trials, how many were pruned, and the mean duration of pruned and complete trials.
SELECT r.group_name, count(*) AS trials,
       sum(CASE WHEN t.state = 'PRUNED' THEN 1 ELSE 0 END) AS pruned,
       avg(CASE WHEN t.state = 'PRUNED' THEN t.duration_s END) AS mean_pruned_s,
       avg(CASE WHEN t.state = 'COMPLETE' THEN t.duration_s END) AS mean_complete_s
FROM runs r
JOIN trials t ON t.run_id = r.run_id
GROUP BY r.group_name
ORDER BY r.group_name
