//! Named regression cases: schedules that caught a defect, kept as explicit
//! op lists (stable when the generator changes). Each names the defect.
