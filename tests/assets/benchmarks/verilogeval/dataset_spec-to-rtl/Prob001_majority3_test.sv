`timescale 1 ps/1 ps
module tb();
  reg a, b, c;
  wire y_ref, y_dut;
  integer i, mismatches = 0;
  RefModule r(.a(a), .b(b), .c(c), .y(y_ref));
  TopModule d(.a(a), .b(b), .c(c), .y(y_dut));
  initial begin
    for (i = 0; i < 8; i = i + 1) begin
      {a, b, c} = i[2:0]; #1;
      if (y_ref !== y_dut) mismatches = mismatches + 1;
    end
    $display("Mismatches: %0d in 8 samples", mismatches);
    $finish;
  end
endmodule
