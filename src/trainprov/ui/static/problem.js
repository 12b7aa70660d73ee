// A page about a store that is not there yet tries again by itself.
"use strict";
if (document.getElementById("problem")?.dataset.retry) setTimeout(() => location.reload(), 3000);
