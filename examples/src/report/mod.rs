//! Reports: the comparison table on stdout and the self-contained
//! `report.html` with inline SVG charts.

mod adaptive;
pub mod html;
pub mod svg;
pub mod table;
mod tenants;
