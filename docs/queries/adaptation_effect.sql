-- Effect of each learning-rate change: mean val_loss in the 3 epochs before it and in the
-- 3 epochs from the one that first trained with the new rate (adaptations.epoch).
SELECT a.run_id, a.epoch, a.old_value, a.new_value, a.cause,
       (SELECT avg(m.val_loss) FROM epoch_metrics m
         WHERE m.run_id = a.run_id AND m.epoch BETWEEN a.epoch - 3 AND a.epoch - 1) AS val_loss_before,
       (SELECT avg(m.val_loss) FROM epoch_metrics m
         WHERE m.run_id = a.run_id AND m.epoch BETWEEN a.epoch AND a.epoch + 2) AS val_loss_after
FROM adaptations a
WHERE a.parameter = 'learning_rate'
ORDER BY a.run_id, a.epoch
