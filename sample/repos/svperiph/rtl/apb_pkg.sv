// apb_pkg: shared types and helpers for the APB peripherals.
// Defines the register offsets of the APB register block, the data width
// and a function that tells whether an address is one of the registers.
package apb_pkg;
  parameter int DATA_W = 32;

  typedef logic [31:0] data_t;  // DATA_W bits

  typedef enum logic [3:0] {
    REG_CTRL    = 4'h0,
    REG_STATUS  = 4'h4,
    REG_DATA    = 4'h8,
    REG_IRQ_EN  = 4'hC
  } reg_offset_e;

  function automatic bit is_register(input logic [3:0] offset);
    return offset == REG_CTRL || offset == REG_STATUS ||
           offset == REG_DATA || offset == REG_IRQ_EN;
  endfunction
endpackage
