-- Live progress: the last 5 epochs of the run that recorded an epoch most recently.
SELECT m.run_id, m.epoch, m.loss, m.val_loss, m.learning_rate, m.epoch_time_s, r.status
FROM epoch_metrics m
JOIN runs r ON r.run_id = m.run_id
WHERE m.run_id = (SELECT run_id FROM epoch_metrics ORDER BY recorded_at DESC LIMIT 1)
ORDER BY m.recorded_at DESC
LIMIT 5
